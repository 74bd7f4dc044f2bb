-- The coupon path's references, kept like the order path's
-- (`hot_path_references`): the transaction that issues coupons locks the
-- coupon's row (FOR NO KEY UPDATE) before inserting its `user_coupons`
-- rows, and the users were found to exist first; users and coupons are
-- never deleted. The two foreign keys' triggers doubled the cost of every
-- issued coupon (2,000 rows: 28 ms with them, 14 ms without), which is what
-- the first second of a drop — when every request still wins — is made of.
-- `stampede audit` checks "references exist" for these rows too.
ALTER TABLE user_coupons DROP CONSTRAINT IF EXISTS user_coupons_user_id_fkey;
ALTER TABLE user_coupons DROP CONSTRAINT IF EXISTS user_coupons_coupon_id_fkey;
