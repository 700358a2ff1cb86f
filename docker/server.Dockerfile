# The federation server: Flower SuperLink + the FedVLA ServerApp (Expert-Driven Aggregation).
# No ROS needed: the server only handles model tensors.
#   docker build -f docker/server.Dockerfile -t fedvla-server .
FROM python:3.11-slim
WORKDIR /opt/fedvla
COPY requirements-ml.txt requirements-nodeps.txt constraints.txt ./
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements-ml.txt -c constraints.txt
# The core, the Flower app and the deployment CLI: the layout keeps every ROS package out of the server.
COPY src/fedvla_core ./src/fedvla_core
COPY src/fedvla_flower ./src/fedvla_flower
COPY src/fedvla_fed_server ./src/fedvla_fed_server
RUN pip install --no-cache-dir --no-deps ./src/fedvla_core ./src/fedvla_flower ./src/fedvla_fed_server
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 9092 9093
CMD ["fedvla-federation", "serve", "--certs", "/certs", "--state-dir", "/state"]
