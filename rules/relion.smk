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
        relion=config["relion"],
        ctf=SIM["ctf"] if HAS_TRUTH else None,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/export_relion.py"
