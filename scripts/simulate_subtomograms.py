"""Rule simulate_subtomograms: a labelled subtomogram set (subtomogram mode)."""

from tomoclust.formats.atomic import write_json
from tomoclust.formats.mrc import read_mrc
from tomoclust.formats.stacks import StackWriter
from tomoclust.formats.star import optics_table, write_star
from tomoclust.rule import log, run_rule
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import CtfSettings, Template


def main(smk) -> None:
    s = smk.params.settings
    templates = []
    for i, (name, path) in enumerate(zip(smk.params.names, smk.input.templates, strict=True)):
        dens, _ = read_mrc(path, what="template")
        templates.append(Template(name, i + 1, dens))
    res = simulate_subtomograms(
        templates, n_per_class=int(s["n_per_class"]), box=int(s["box"]),
        voxel_size=float(s["voxel_size"]), snr=float(s["snr"]), convention=s["convention"],
        tilt_min=float(s["tilt_min"]), tilt_max=float(s["tilt_max"]),
        ctf=CtfSettings(**smk.params.ctf), include_empty=bool(s["include_empty"]),
        seed=int(s["seed"]),
    )
    log.info("%d subtomograms; SNR nominal %.4g (%s), measured %.4g", res.info["n"],
             res.info["snr_nominal"], res.info["convention"], res.info["snr_measured"])
    with StackWriter(smk.output.stack, len(res.stack), int(s["box"]), float(s["voxel_size"])) as w:
        if len(res.stack):
            w[:] = res.stack
    df = res.truth.copy()
    stack_name = smk.output.stack.split("/")[-1]
    df.insert(0, "rlnImageName", [f"{i + 1}@{stack_name}" for i in range(len(df))])
    df["rlnOpticsGroup"] = 1
    optics = optics_table(float(s["voxel_size"]), float(s["voxel_size"]), int(s["box"]))
    write_star(smk.output.star, {"optics": optics, "particles": df})
    write_json(smk.output.info, res.info)


run_rule(snakemake, main)
