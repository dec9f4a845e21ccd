"""Generated gRPC/protobuf modules of the Smalltown node API (see ``protos/``)."""
