"""After the gates: a release directory (its files, `release.json`, the model card, the EU AI Act
Annex XI technical documentation) and `orch verify`, which checks one against its manifest."""
