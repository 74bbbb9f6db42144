"""Data: MEDS input read and validated, task labels (ACES configs or label tables), the vocabulary
and the tokenized cache, and the synthetic claims world (``synth``) that stands in for patients.
Imports only the base modules at the top (errors, atomic, named, storage, metrics)."""
