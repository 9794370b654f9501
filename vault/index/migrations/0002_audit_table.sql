-- Version 2: the audit trail in a table of its own (its databases were index_kv rows under
-- db names "audit/<name>"), so that it can be dumped, granted and vacuumed apart from the index
-- and a role can be given INSERT on it without UPDATE or DELETE. Rows move unchanged.
CREATE TABLE audit_kv (
    db text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (db, key)
);

INSERT INTO audit_kv (db, key, value)
    SELECT substr(db, length('audit/') + 1), key, value FROM index_kv WHERE db LIKE 'audit/%';
DELETE FROM index_kv WHERE db LIKE 'audit/%';
