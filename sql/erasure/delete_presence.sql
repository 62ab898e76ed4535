-- An erasure: the listeners' presence events leave space_presence (a mutation, as delete_events.sql).
ALTER TABLE %(space_presence)s DELETE WHERE listener_id IN %(viewer_ids)s
