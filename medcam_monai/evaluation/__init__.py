"""How good are the explanations: metrics by family, the evaluation runner and its report.

- :mod:`~medcam_monai.evaluation.metrics`: faithfulness, minimality, deletion/insertion,
  localisation, similarity and the sanity check, on plain tensors;
- :mod:`~medcam_monai.evaluation.data`: a bundle's network, cases and true evidence;
- :mod:`~medcam_monai.evaluation.runner`: every method on every case, scored;
- :mod:`~medcam_monai.evaluation.report`: the table, the figures and the folder;
- :mod:`~medcam_monai.evaluation.evaluate`: all of it for one bundle (``medcam-monai evaluate``).

Speed and memory are measured elsewhere: the scripts in ``benchmarks/``.
"""
