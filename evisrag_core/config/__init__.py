"""The one typed configuration object, read from params.yaml and validated once at the edge.

Every stage reads its section from here; DVC tracks the same keys (`params:` in dvc.yaml), so a change to a value
reruns exactly the stages that read it. Unknown keys are errors (they are usually typos), and the message lists the
valid keys. An empty or non-mapping params file is an error too.

One source of truth: the code defaults equal the repository's params.yaml, key for key (a test compares them).
Profiles (`sft.profile`, `rsgrpo.profile`, `predict.profile`) are YAML overlays in configs/profiles/; a key you set
in the params file wins over the profile (the rule in full: config/profiles.py).

    base.py       the shared base model, pixel units, pixel-range check
    sections.py   data, model, predict (profiled), evaluate, report, tracking, pipeline, serve
    training.py   sft and rsgrpo (profiled)
    profiles.py   the overlay rule and each value's source
    params.py     Params, reading and validating a params file
"""

from evisrag_core.config.base import (
    MERGED_PATCH_PIXELS,
    PATCH_PIXELS,
    OnBadRecord,
    PromptTemplate,
)
from evisrag_core.config.params import (
    DEFAULT_PARAMS,
    Params,
    ParamsError,
    PlanError,
    load_params,
    parse_params,
    read_params_file,
    section_sources,
)
from evisrag_core.config.profiles import NO_PROFILE, available_profiles, effective_table, profile_overlay
from evisrag_core.config.sections import (
    DataParams,
    EmbeddedDataParams,
    EvaluateParams,
    ModelParams,
    PipelineParams,
    PredictParams,
    ReportParams,
    ServeParams,
    TinyModelParams,
    TrackingParams,
)
from evisrag_core.config.training import RSGRPOParams, SFTParams

# The released settings (spec §5, §6) as read-only mappings, loaded from configs/profiles/paper.yaml.
PAPER_SFT = profile_overlay("paper", "sft")
PAPER_RSGRPO = profile_overlay("paper", "rsgrpo")

__all__ = [
    "DEFAULT_PARAMS",
    "MERGED_PATCH_PIXELS",
    "NO_PROFILE",
    "PAPER_RSGRPO",
    "PAPER_SFT",
    "PATCH_PIXELS",
    "DataParams",
    "EmbeddedDataParams",
    "EvaluateParams",
    "ModelParams",
    "OnBadRecord",
    "Params",
    "ParamsError",
    "PipelineParams",
    "PlanError",
    "PredictParams",
    "PromptTemplate",
    "RSGRPOParams",
    "ReportParams",
    "SFTParams",
    "ServeParams",
    "TinyModelParams",
    "TrackingParams",
    "available_profiles",
    "effective_table",
    "load_params",
    "parse_params",
    "read_params_file",
    "section_sources",
]
