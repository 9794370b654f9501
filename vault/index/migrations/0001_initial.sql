-- imagevault PostgreSQL index, version 1: every named database of the index and of the audit
-- trail in one ordered key -> value table. Keys and values are the bytes LMDB holds (blinded
-- keys, sealed values); bytea compares as unsigned bytes, shorter first: LMDB's order.
CREATE TABLE schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE index_kv (
    db text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (db, key)
);
