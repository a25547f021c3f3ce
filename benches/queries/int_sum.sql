-- Integer arithmetic and an integer sum over every line item (checked for overflow by Parley, wrapping in raw
-- DataFusion, widened to HUGEINT by DuckDB)
SELECT l_linenumber, sum(l_partkey * 10 + l_suppkey) AS keyed, count(*) AS n
FROM tpch.lineitem
GROUP BY l_linenumber
ORDER BY l_linenumber
