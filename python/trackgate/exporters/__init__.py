"""Exporters: one module per destination."""

from trackgate.exporters.base import Exporter, Outcome
from trackgate.exporters.file import FileExporter
from trackgate.exporters.otlp_grpc import OtlpGrpcExporter
from trackgate.exporters.otlp_http import OtlpHttpExporter

__all__ = ["Exporter", "FileExporter", "OtlpGrpcExporter", "OtlpHttpExporter", "Outcome"]
