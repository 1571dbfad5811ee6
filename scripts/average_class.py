"""Rule average_class: gold-standard alignment and averaging of one class of one method."""

import time

from tomoclust import rule
from tomoclust.average import TruthMaps, average_method_class, read_class
from tomoclust.formats.atomic import write_json, write_tsv
from tomoclust.formats.mrc import write_mrc
from tomoclust.formats.star import write_star
from tomoclust.report.plots import plot_fsc, plot_slices


def main(smk) -> None:
    t0, k, method, p = time.time(), int(smk.wildcards.k), smk.wildcards.method, smk.params
    device = rule.torch_device(smk)
    truth = TruthMaps(smk.input.truth, smk.input.truth_maps, p.templates, p.tolerance,
                      p.ctf) if p.has_truth else None
    cls = read_class(smk.input.clusters, smk.input.particles, smk.input.stack, k)
    out = average_method_class(cls, p.averaging, method, k, p.wedge, device, truth)
    for name in ("average", "half1", "half2"):
        write_mrc(getattr(smk.output, name), getattr(out.result, name), out.voxel_size)
    write_tsv(smk.output.fsc, out.fsc)
    write_star(smk.output.star, out.particles)
    res_0143 = out.info["resolution_0143_angst"]
    title = f"{method} class {k}: {len(cls.table)} particles, FSC 0.143 at {res_0143:.0f} Å"
    plot_slices(out.result.average, smk.output.slices, title=title, reference=out.truth_view,
                reference_label=f"truth {out.info.get('template', '')}")
    plot_fsc(out.fsc, smk.output.fsc_plot, title=title)
    out.info["seconds"] = time.time() - t0
    write_json(smk.output.info, out.info)
    rule.log.info("%s class %d: half-map FSC 0.143 at %.1f Å (%.1f s)", method, k, res_0143,
                  out.info["seconds"])


rule.run_rule(snakemake, main)
