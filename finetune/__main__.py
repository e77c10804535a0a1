"""`python -m finetune CONFIG ...` / `accelerate launch -m finetune CONFIG ...`: same as `mmrec finetune`."""
import sys

from mmrec.cli import main

sys.exit(main(["finetune", *sys.argv[1:]]))
