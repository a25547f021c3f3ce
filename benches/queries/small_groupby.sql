-- Agent query: customers and average balance per nation
SELECT n_name, count(*) AS customers, avg(c_acctbal) AS avg_balance
FROM tpch.customer JOIN tpch.nation ON c_nationkey = n_nationkey
GROUP BY n_name
ORDER BY n_name
