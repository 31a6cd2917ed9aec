"""The consuming side: fetch from Kafka, apply each event exactly once and in order, commit;
dead letters for what cannot be applied."""
