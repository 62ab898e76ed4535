"""Where figures are read: the dashboards API, the queries behind it, Superset and the live page's browser check."""
