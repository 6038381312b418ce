// The one place where failures become NBD error values (../shared/reference/nbd-protocol.md,
// "Error values"). The caller logs the full error.

import CowStore
import NBDProtocol
import SystemPackage

enum ErrorMapping {
    /// The NBD error a failed request is answered with.
    static func nbdError(for error: any Error) -> ErrorCode {
        guard let storeError = error as? StoreError else { return .io }
        switch storeError {
        case .outOfRange, .invalidArgument: return .invalid
        case .readOnly: return .perm
        case .notFast: return .notSupported
        default:
            switch storeError.errno {
            case .noSpace?, .diskQuotaExceeded?, .fileTooLarge?: return .noSpace
            case .notPermitted?, .permissionDenied?, .readOnlyFileSystem?: return .perm
            default: return .io
            }
        }
    }
}
