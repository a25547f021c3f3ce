-- Agent query: look up one customer by key
SELECT c_custkey, c_name, c_address, c_phone, c_acctbal, c_mktsegment
FROM tpch.customer
WHERE c_custkey = 4242
