"""Feature learning, one module per method (torch), with the shared networks, training plumbing
and augmentation. ``fewshot_support`` and ``transfer_settings`` are torch-free (the workflow
imports them when it parses the configuration).
"""
