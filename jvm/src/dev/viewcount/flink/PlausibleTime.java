package dev.viewcount.flink;

import java.time.Instant;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code event_time_of(reject_reason, event_time_ms, kafka_time, max_future_s, max_age_s)}: the
 * time a record's windows and watermark go by. A valid event with a plausible time (not more than
 * max_future_s after, nor max_age_s before, the moment its record reached Kafka) keeps its own
 * time; anything else (a reject, which never reaches a window) takes the start of the epoch, so
 * that it never moves the watermark: not a record dated 2099, and not one whose Kafka time is
 * "now" while the valid events around it are a night replayed from 2024.
 */
public class PlausibleTime extends ScalarFunction {
    public @DataTypeHint("TIMESTAMP_LTZ(3)") Instant eval(
            String rejectReason, Long eventTimeMs,
            @DataTypeHint("TIMESTAMP_LTZ(3)") Instant kafkaTime, Integer maxFutureS, Integer maxAgeS) {
        if (rejectReason == null && eventTimeMs != null
                && TimeReason.reason(eventTimeMs, kafkaTime, maxFutureS, maxAgeS) == null) {
            return Instant.ofEpochMilli(eventTimeMs);
        }
        return Instant.EPOCH;
    }
}
