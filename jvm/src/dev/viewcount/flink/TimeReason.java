package dev.viewcount.flink;

import java.time.Instant;

import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code implausible_time(event_time_ms, kafka_time, max_future_s, max_age_s)}: why an event's
 * time cannot be right against the moment its record reached Kafka, or NULL when it is plausible.
 */
public class TimeReason extends ScalarFunction {
    public String eval(Long eventTimeMs, @org.apache.flink.table.annotation.DataTypeHint("TIMESTAMP_LTZ(3)") Instant kafkaTime,
                       Integer maxFutureS, Integer maxAgeS) {
        return eventTimeMs == null ? null : reason(eventTimeMs, kafkaTime, maxFutureS, maxAgeS);
    }

    static String reason(long eventTimeMs, Instant kafkaTime, Integer maxFutureS, Integer maxAgeS) {
        if (kafkaTime == null) {
            return null;
        }
        long arrival = kafkaTime.toEpochMilli();
        if (eventTimeMs - arrival > maxFutureS * 1000L) {
            return "event_time is more than " + maxFutureS + " s ahead of its arrival";
        }
        if (arrival - eventTimeMs > maxAgeS * 1000L) {
            return "event_time is more than " + maxAgeS + " s before its arrival";
        }
        return null;
    }
}
