"""Rules fewshot_training_set / fewshot_support_set: labelled simulated subtomograms of chosen
templates at the particles' box and voxel size (episodic training data, or a simulated
support set)."""

from tomoclust.formats.atomic import write_json
from tomoclust.rule import log, run_rule, write_particle_set
from tomoclust.simulate.labelled_sets import simulate_labelled_set
from tomoclust.simulate.tomograms import CtfSettings, load_templates


def main(smk) -> None:
    s = smk.params.settings
    box, vs = int(s["box"]), float(s["voxel_size"])
    templates = load_templates(smk.params.names, smk.input.templates)
    stack, truth = simulate_labelled_set(
        templates, int(s["n_per_class"]), box, vs, list(s["snr"]), ctf=CtfSettings(**s["ctf"]),
        tilt_min=float(s["tilt"][0]), tilt_max=float(s["tilt"][1]), seed=int(s["seed"]))
    log.info("%d labelled subtomograms of %s at SNR %s (aitom convention), %d³ at %.3g Å",
             len(stack), ", ".join(smk.params.names), s["snr"], box, vs)
    truth["rlnClassName"] = truth["tclTemplateName"]
    write_particle_set(smk.output.star, smk.output.stack, stack, truth, vs, box)
    write_json(smk.output.info, {"n": len(stack), "classes": {t.name: t.class_number
                                                              for t in templates},
                                 "snr_convention": "aitom", **s})


run_rule(snakemake, main)
