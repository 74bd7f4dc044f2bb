-- Request ids are compared byte for byte. Under the database's collation
-- (C.UTF-8 here, a locale elsewhere) every comparison in their B-tree
-- indexes went through the C library's strcoll(); with COLLATE "C"
-- PostgreSQL compares them with memcmp(). Equality is the same either way
-- (both collations are deterministic); only the order of ids with
-- non-ASCII characters changes, and nothing reads ids in order. Each index
-- on a request id is rebuilt once, here.
ALTER TABLE processed_requests ALTER COLUMN request_id TYPE TEXT COLLATE "C";
ALTER TABLE user_coupons ALTER COLUMN request_id TYPE TEXT COLLATE "C";
ALTER TABLE orders ALTER COLUMN request_id TYPE TEXT COLLATE "C";
