-- Run once by the official postgres image on an empty data directory
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
-- One database per service, as in the native run. "order" is a reserved word: keep it quoted.
CREATE DATABASE "order";
CREATE DATABASE inventory;
CREATE DATABASE shipping;
