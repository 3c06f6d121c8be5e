-- Run once by the postgres image at the database's first start (docker/compose.yaml), as the
-- mlflow role: the basic-auth app's users and permissions get their own database
-- (mlflow-basic-auth.ini), beside the runs' (POSTGRES_DB=mlflow).
CREATE DATABASE mlflow_auth;
