"""`python -m finetune CONFIG ...` / `accelerate launch -m finetune CONFIG ...`: same as `mmrec finetune`."""
import sys

from mmrec.commands import invoke

sys.exit(invoke("finetune", sys.argv[1:]))
