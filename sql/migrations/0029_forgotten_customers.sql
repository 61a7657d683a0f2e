-- 0029: the customers forget-customer has forgotten. An order the warehouse holds with its
-- customer reduced to the id is the same content as the API's version of it with the customer's
-- fields only when those fields were forgotten here: otherwise the API sent the id alone first and
-- the fields since, and the newer content must load. pipelines/warehouse/forget.py, merge.py
-- (FORGOTTEN_CUSTOMER). Customers forgotten before this migration are recorded by running
-- forget-customer for them again (it changes nothing else the second time).
create table if not exists taptouch.forgotten_customers (
    customer_id   bigint primary key,
    forgotten_at  timestamptz not null default now()
);
