from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EtcdPeer(_message.Message):
    __slots__ = ("name", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class GoldenTicket(_message.Message):
    __slots__ = ("etcd_ca_cert", "etcd_client_cert", "etcd_client_key", "etcd_crl", "peers", "this", "node_id", "node_cert", "node_key", "kubernetes_ca_cert", "kubelet_client_cert", "kubelet_client_key", "kubelet_server_cert", "kubelet_server_key", "apiserver_address", "kube_proxy_client_cert", "kube_proxy_client_key", "provisioner_client_cert", "provisioner_client_key", "kubernetes_ca_key", "service_account_key")
    ETCD_CA_CERT_FIELD_NUMBER: _ClassVar[int]
    ETCD_CLIENT_CERT_FIELD_NUMBER: _ClassVar[int]
    ETCD_CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ETCD_CRL_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    THIS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_CERT_FIELD_NUMBER: _ClassVar[int]
    NODE_KEY_FIELD_NUMBER: _ClassVar[int]
    KUBERNETES_CA_CERT_FIELD_NUMBER: _ClassVar[int]
    KUBELET_CLIENT_CERT_FIELD_NUMBER: _ClassVar[int]
    KUBELET_CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    KUBELET_SERVER_CERT_FIELD_NUMBER: _ClassVar[int]
    KUBELET_SERVER_KEY_FIELD_NUMBER: _ClassVar[int]
    APISERVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KUBE_PROXY_CLIENT_CERT_FIELD_NUMBER: _ClassVar[int]
    KUBE_PROXY_CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    PROVISIONER_CLIENT_CERT_FIELD_NUMBER: _ClassVar[int]
    PROVISIONER_CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    KUBERNETES_CA_KEY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_KEY_FIELD_NUMBER: _ClassVar[int]
    etcd_ca_cert: bytes
    etcd_client_cert: bytes
    etcd_client_key: bytes
    etcd_crl: bytes
    peers: _containers.RepeatedCompositeFieldContainer[EtcdPeer]
    this: EtcdPeer
    node_id: str
    node_cert: bytes
    node_key: bytes
    kubernetes_ca_cert: bytes
    kubelet_client_cert: bytes
    kubelet_client_key: bytes
    kubelet_server_cert: bytes
    kubelet_server_key: bytes
    apiserver_address: str
    kube_proxy_client_cert: bytes
    kube_proxy_client_key: bytes
    provisioner_client_cert: bytes
    provisioner_client_key: bytes
    kubernetes_ca_key: bytes
    service_account_key: bytes
    def __init__(self, etcd_ca_cert: _Optional[bytes] = ..., etcd_client_cert: _Optional[bytes] = ..., etcd_client_key: _Optional[bytes] = ..., etcd_crl: _Optional[bytes] = ..., peers: _Optional[_Iterable[_Union[EtcdPeer, _Mapping]]] = ..., this: _Optional[_Union[EtcdPeer, _Mapping]] = ..., node_id: _Optional[str] = ..., node_cert: _Optional[bytes] = ..., node_key: _Optional[bytes] = ..., kubernetes_ca_cert: _Optional[bytes] = ..., kubelet_client_cert: _Optional[bytes] = ..., kubelet_client_key: _Optional[bytes] = ..., kubelet_server_cert: _Optional[bytes] = ..., kubelet_server_key: _Optional[bytes] = ..., apiserver_address: _Optional[str] = ..., kube_proxy_client_cert: _Optional[bytes] = ..., kube_proxy_client_key: _Optional[bytes] = ..., provisioner_client_cert: _Optional[bytes] = ..., provisioner_client_key: _Optional[bytes] = ..., kubernetes_ca_key: _Optional[bytes] = ..., service_account_key: _Optional[bytes] = ...) -> None: ...

class EnrolmentConfig(_message.Message):
    __slots__ = ("golden_ticket", "node_id")
    GOLDEN_TICKET_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    golden_ticket: GoldenTicket
    node_id: str
    def __init__(self, golden_ticket: _Optional[_Union[GoldenTicket, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...
