"""Loaders over the stores: device-resident, DALI and torch; augmentation; tasks; fusion inputs; MIL tile features."""
