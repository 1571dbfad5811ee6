"""Rules fewshot_training_set / fewshot_support_set: labelled simulated subtomograms of chosen
templates at the particles' box and voxel size (episodic training data, or a simulated
support set)."""

from tomoclust.formats.atomic import write_json
from tomoclust.formats.mrc import read_mrc
from tomoclust.formats.stacks import StackWriter
from tomoclust.formats.star import optics_table, write_star
from tomoclust.rule import log, run_rule
from tomoclust.simulate.labelled_sets import simulate_labelled_set
from tomoclust.simulate.tomograms import CtfSettings, Template


def main(smk) -> None:
    s = smk.params.settings
    box, vs = int(s["box"]), float(s["voxel_size"])
    templates = []
    for i, (name, path) in enumerate(zip(smk.params.names, smk.input.templates, strict=True)):
        dens, _ = read_mrc(path, what="template")
        templates.append(Template(name, i + 1, dens))
    stack, truth = simulate_labelled_set(
        templates, int(s["n_per_class"]), box, vs, list(s["snr"]), ctf=CtfSettings(**s["ctf"]),
        tilt_min=float(s["tilt"][0]), tilt_max=float(s["tilt"][1]), seed=int(s["seed"]))
    log.info("%d labelled subtomograms of %s at SNR %s (aitom convention), %d³ at %.3g Å",
             len(stack), ", ".join(smk.params.names), s["snr"], box, vs)
    with StackWriter(smk.output.stack, len(stack), box, vs) as w:
        w[:] = stack
    name = smk.output.stack.split("/")[-1]
    truth.insert(0, "rlnImageName", [f"{i + 1}@{name}" for i in range(len(truth))])
    truth["rlnClassName"] = truth["tclTemplateName"]
    truth["rlnOpticsGroup"] = 1
    write_star(smk.output.star, {"optics": optics_table(vs, vs, box), "particles": truth})
    write_json(smk.output.info, {"n": len(stack), "classes": {t.name: t.class_number
                                                              for t in templates},
                                 "snr_convention": "aitom", **s})


run_rule(snakemake, main)
