"""From files to batches: the raw formats, checked tables, token batches and the LightningDataModule."""
