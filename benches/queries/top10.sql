-- Agent query: the ten largest open orders since 1997
SELECT o_orderkey, o_custkey, o_totalprice, o_orderdate
FROM tpch.orders
WHERE o_orderdate >= date '1997-01-01' AND o_orderstatus = 'O'
ORDER BY o_totalprice DESC
LIMIT 10
