"""The one exception type of the factlens client."""
import grpc


class FactlensError(Exception):
    """A failed call or a request the client refused to send.

    ``code`` is a ``grpc.StatusCode`` (the server's, or INVALID_ARGUMENT for input the client
    rejects before sending), ``message`` the explanation, which names the offending field.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def invalid_argument(message: str) -> FactlensError:
    """A client-side INVALID_ARGUMENT, shaped like the server's."""
    return FactlensError(grpc.StatusCode.INVALID_ARGUMENT, message)
