"""`python -m finetune CONFIG ...` / `accelerate launch -m finetune CONFIG ...`: same as `mmrec finetune`."""
import sys

from finetune.distributed import end_process
from mmrec.commands import invoke

end_process(invoke("finetune", sys.argv[1:]))
