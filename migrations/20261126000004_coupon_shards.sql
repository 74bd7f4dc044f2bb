-- How many Redis sub-counters one coupon's stock is split over (1: kept
-- whole). Every process reads it from here, so all agree on which
-- sub-counter a user belongs to. Fixed at creation: changing it would move
-- users between sub-counters while their grants are pending.
ALTER TABLE coupons
    ADD COLUMN shards INT NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 64);
