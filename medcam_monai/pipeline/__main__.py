"""``python -m medcam_monai.pipeline ...``: the ``medcam-monai pipeline`` subcommand, standalone."""

import sys

from medcam_monai.threads import configure_threads
from medcam_monai.pipeline.command import build_pipeline_parser, run_pipeline

if __name__ == "__main__":
    args = build_pipeline_parser().parse_args()
    configure_threads(None)  # OMP_NUM_THREADS, else the idle cores (as `medcam-monai` does)
    sys.exit(run_pipeline(args))
