package dev.viewcount.flink;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.functions.AggregateFunction;
import org.apache.flink.types.Row;

/**
 * {@code post_window(event_id, event_type, surface, action, viewer_id)}: everything both rollups need of a
 * post-minute window, from one aggregation: the exact views and impressions, deduplicated on event_id, in total
 * and per (surface, action); the deliveries behind them; the distinct viewers of its views (for the sketch).
 *
 * <p>It stands for {@code COUNT(DISTINCT event_id) FILTER (WHERE event_type = ...)} per post and minute and per
 * post, minute, surface and action, {@code COUNT(*)} and {@code ARRAY_AGG(DISTINCT viewer_id) FILTER (WHERE
 * event_type = 'view')}. Those took two window aggregations, each with its own state of the window's event ids and
 * its own shuffle of every event (the second cost about 9 us a record: docs/performance.md, the ladder's rung 4).
 * Here one map holds, per event id, what it was seen as: its (type, surface, action) triples, one in practice,
 * more only when a duplicate disagrees with its first delivery. The figures are those of the SQL it replaces in
 * every case: an event id counts once in a total per type it was seen with, and once in each (surface, action)
 * row per type it was seen with there. (Without a DISTINCT aggregate the batch planner, which the unit tests use,
 * has nothing to expand either.)
 */
@FunctionHint(output = @DataTypeHint(
        "ROW<views BIGINT, impressions BIGINT, deliveries BIGINT, viewers ARRAY<BIGINT>, "
                + "surfaces ARRAY<ROW<surface STRING, action STRING, views BIGINT, impressions BIGINT>>>"))
public class PostWindow extends AggregateFunction<Row, PostWindow.Seen> {
    /** Separates the fields of a triple; a second triple of the same id follows after {@link #NEXT}. Neither can
     * occur in a valid event's surface or action: both are enums of the event schemas (schemas/). */
    private static final char FIELD = '\u0001';
    private static final char NEXT = '\u0002';
    /** A NULL surface or action (GROUP BY keeps it apart from the empty string; so do we). */
    private static final String NULL = "\u0003";
    private static final char VIEW = 'v';
    private static final char IMPRESSION = 'i';

    /** The window's event ids, each with what it was seen as ({@code type FIELD surface FIELD action}, ...); the
     * viewers of its views; its deliveries. */
    public static class Seen {
        public MapView<String, String> events = new MapView<>();
        public MapView<Long, Boolean> viewers = new MapView<>();
        public long deliveries;
    }

    @Override
    public Seen createAccumulator() {
        return new Seen();
    }

    public void accumulate(Seen seen, String eventId, String eventType, String surface, String action,
            Long viewerId) throws Exception {
        seen.deliveries++;
        char type = "view".equals(eventType) ? VIEW : "impression".equals(eventType) ? IMPRESSION : 0;
        if (type == VIEW && viewerId != null) {
            seen.viewers.put(viewerId, Boolean.TRUE);
        }
        if (eventId == null || type == 0) {
            return; // not counted: as COUNT(DISTINCT event_id) FILTER (WHERE event_type = ...) ignores it
        }
        String triple = type + (surface == null ? NULL : surface) + FIELD + (action == null ? NULL : action);
        String before = seen.events.get(eventId);
        if (before == null) {
            seen.events.put(eventId, triple);
        } else if (!contains(before, triple)) {
            seen.events.put(eventId, before + NEXT + triple);
        }
    }

    private static boolean contains(String triples, String triple) {
        for (int start = 0; start <= triples.length(); ) {
            int end = triples.indexOf(NEXT, start);
            end = end < 0 ? triples.length() : end;
            if (triples.regionMatches(start, triple, 0, triple.length()) && end - start == triple.length()) {
                return true;
            }
            start = end + 1;
        }
        return false;
    }

    private static String orNull(String field) {
        return NULL.equals(field) ? null : field;
    }

    @Override
    public Row getValue(Seen seen) {
        long views = 0;
        long impressions = 0;
        // (surface FIELD action) -> {views, impressions}, sorted so that a window's rows come out in one order.
        TreeMap<String, long[]> surfaces = new TreeMap<>();
        try {
            for (Map.Entry<String, String> entry : seen.events.entries()) {
                String triples = entry.getValue();
                if (triples.indexOf(NEXT) < 0) { // the usual case: one delivery, or duplicates that agree
                    int type = triples.charAt(0) == VIEW ? 0 : 1;
                    surfaces.computeIfAbsent(triples.substring(1), k -> new long[2])[type]++;
                    if (type == 0) {
                        views++;
                    } else {
                        impressions++;
                    }
                    continue;
                }
                boolean viewed = false;
                boolean impressed = false;
                for (String triple : triples.split(String.valueOf(NEXT))) {
                    int type = triple.charAt(0) == VIEW ? 0 : 1;
                    surfaces.computeIfAbsent(triple.substring(1), k -> new long[2])[type]++;
                    viewed |= type == 0;
                    impressed |= type == 1;
                }
                views += viewed ? 1 : 0;
                impressions += impressed ? 1 : 0;
            }
        } catch (Exception e) {
            throw new IllegalStateException("post_window: reading the window's state failed", e);
        }
        List<Row> rows = new ArrayList<>(surfaces.size());
        for (Map.Entry<String, long[]> entry : surfaces.entrySet()) {
            String key = entry.getKey();
            int split = key.indexOf(FIELD);
            rows.add(Row.of(orNull(key.substring(0, split)), orNull(key.substring(split + 1)), entry.getValue()[0],
                    entry.getValue()[1]));
        }
        List<Long> viewers = new ArrayList<>();
        try {
            for (Long viewer : seen.viewers.keys()) {
                viewers.add(viewer);
            }
        } catch (Exception e) {
            throw new IllegalStateException("post_window: reading the window's viewers failed", e);
        }
        return Row.of(views, impressions, seen.deliveries, viewers.toArray(new Long[0]), rows.toArray(new Row[0]));
    }
}
