"""Keep the console to what matters: Scion's own lines, one training bar, and real warnings.

Only two library messages are hidden, each matched exactly, because the user can do nothing about
them and they point at no problem in the run:

- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community": PEFT imports
  bitsandbytes whenever it is installed (peft/helpers.py, at `import peft`), and on a CPU with
  AVX512-BF16 bitsandbytes then reports that an optional 4-bit CPU kernel is not installed. Only a
  QLoRA run on the CPU uses that kernel, so it stays visible there.
- transformers' FutureWarning "`is_gradient_checkpointing` is deprecated", raised when PEFT's
  PeftModel reads that old property of the model it wraps (not a call of ours).

Every other warning, from any library, still shows.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

BNB_CPU_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
PEFT_READS_OLD_PROPERTY = "`is_gradient_checkpointing` is deprecated"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_console(quantized_on_cpu: bool = False) -> None:
    """Hide the unused-kernel notice (unless this is QLoRA on the CPU) and transformers' own bars.

    transformers' "Loading weights" and "Writing model shards" bars are turned off: loading a small
    model takes a second, and the one bar worth watching is the training bar (train/progress.py).
    """
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger(BNB_CPU_OPS_LOGGER)  # works before bitsandbytes is imported
    if not quantized_on_cpu and not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(BNB_CPU_KERNEL_NOTICE))
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def peft_wrapping():
    """Around PeftModel construction: hide only PEFT's read of transformers' deprecated property."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_READS_OLD_PROPERTY, category=FutureWarning)
        yield
