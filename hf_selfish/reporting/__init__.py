"""Reports of comparisons, read from run directories only (never trains).

- `summary`: statistics over seeds (means, paired deltas, headline groups, series along training).
- `report`: report.md and summary.json.
- `figures`: the names and captions of the figures; `plots/`: the figures (matplotlib).

Uploading a report: `hf_selfish.hub.push_report`; a model's card: `hf_selfish.model_card`.
"""
