"""Who a message is for: segments, date triggers and schedules, broadcasts, the catalog."""
