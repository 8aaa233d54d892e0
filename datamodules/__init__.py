"""LightningDataModules for the datasets of the suite."""
