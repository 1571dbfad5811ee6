# RELION 5 export: per method, a tomograms.star and per class a particles.star (centred Å
# coordinates, RELION 5.0.1's centre convention; tomoclust/relion5.py).


rule export_relion:
    input:
        unpack(relion_export_inputs),
    output:
        directory("results/relion/{method}"),
    log:
        "logs/relion/{method}.log",
    params:
        relion=section("export_relion", "relion"),
        # a simulation's own microscope; otherwise relion.voltage etc.
        ctf=section("export_relion", "simulation.ctf") if "simulation" in MODES else None,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/export_relion.py"
