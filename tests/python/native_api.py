"""A Python client of the native moe.v1 API built at run time from the server's reflection service,
so the tests need no generated code: the descriptors come from the daemon itself."""
import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)


class ReflectedApi:
    def __init__(self, channel: grpc.Channel):
        self.db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)
        self.channel = channel

    def services(self):
        return set(self.db.get_services())

    def message(self, full_name: str):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def enum_value(self, enum_full_name: str, name: str) -> int:
        return self.pool.FindEnumTypeByName(enum_full_name).values_by_name[name].number

    def unary(self, service: str, method: str):
        m = self.pool.FindServiceByName(service).methods_by_name[method]
        return self.channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda msg: msg.SerializeToString(),
            response_deserializer=self.message(m.output_type.full_name).FromString)

    def stream(self, service: str, method: str):
        m = self.pool.FindServiceByName(service).methods_by_name[method]
        return self.channel.stream_stream(
            f"/{service}/{method}",
            request_serializer=lambda msg: msg.SerializeToString(),
            response_deserializer=self.message(m.output_type.full_name).FromString)
