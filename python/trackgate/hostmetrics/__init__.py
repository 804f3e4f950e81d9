"""Host and NVIDIA GPU metrics, as OTLP: in the gateway (`[hostmetrics]`) or as `trackgate agent`."""

from trackgate.hostmetrics.collector import Collector, GatewayReporter, resource_attributes
from trackgate.hostmetrics.gpu import GpuCollector
from trackgate.hostmetrics.host import HostCollector
from trackgate.hostmetrics.otlp import Metric, encode_request

__all__ = [
    "Collector",
    "GatewayReporter",
    "GpuCollector",
    "HostCollector",
    "Metric",
    "encode_request",
    "resource_attributes",
]
