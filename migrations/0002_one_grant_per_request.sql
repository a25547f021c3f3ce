-- A request leads to at most one grant (issue 11: two concurrent accepts of one offer made two). The state machine
-- already lets only one caller past each transition; this makes the store refuse a second grant too.
DROP INDEX IF EXISTS access_grants_request;
CREATE UNIQUE INDEX access_grants_one_per_request ON access_grants (request_id);
