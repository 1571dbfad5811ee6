# tomoclust: which macromolecules are in these cryo-electron tomograms?
# Thin on purpose: all workflow Python lives in rules/common.smk, all science in scripts/tomoclust.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/ingest.smk"
include: "rules/pick.smk"
include: "rules/extract.smk"
include: "rules/features.smk"
include: "rules/cluster.smk"
include: "rules/evaluate.smk"
include: "rules/external.smk"
include: "rules/copick.smk"
include: "rules/report.smk"
include: "rules/average.smk"


rule all:
    input:
        all_targets(),
    default_target: True
