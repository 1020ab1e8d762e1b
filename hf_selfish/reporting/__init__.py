"""Reports of comparisons, read from run directories only (never trains).

- `summary`: statistics over seeds (means, paired deltas, headline groups, series along training).
- `subsets`: the same per language (each eval subset alone: bits per character, NLL, accuracy, MRR), and
  summary.json's record (docs/guide/summary_json.md).
- `report`: report.md and summary.json; `tables`: markdown tables no wider than 12 columns.
- `figures`: the names and captions of the figures; `plots/`: the figures (matplotlib).

Uploading a report: `hf_selfish.hub.push_report`; a model's card: `hf_selfish.model_card`.
"""
