import Foundation
import Hummingbird
@testable import ZeroSegService

/// The HTTP API's body parser: the input's first line is the Content-Type header, the rest the
/// body (multipart/form-data with its boundary, or JSON), then every field read the ways the
/// endpoints read them. Errors must be APIErrors (400 / 415 with one line).
let multipartTarget = FuzzTarget(name: "multipart", covers: "RequestForm: Content-Type, multipart/form-data (MultipartKit) and JSON bodies, field readers") { bytes in
    let nl = bytes.firstIndex(of: 10) ?? bytes.count
    let contentType = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[..<nl]), as: UTF8.self)
    let body = ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: bytes[min(nl + 1, bytes.count)...]))
    let isAPIError: (Error) -> Bool = { $0 is APIError }
    do {
        let form = try RequestForm.parse(body, contentType: contentType, fileFields: ["image", "images", "masks"])
        for name in Set(form.fields.map(\.name)) {
            _ = try? form.texts(name, maxBytes: 1 << 16)
            _ = try? form.int(name, maxBytes: 64)
            _ = try? form.float(name, maxBytes: 64)
            _ = try? form.bool(name, maxBytes: 64)
            _ = try? form.files(name)
        }
        do { try form.checkKnown(["classes", "image"]) } catch { expectTyped(error, alsoAllowed: isAPIError) }
    } catch { expectTyped(error, alsoAllowed: isAPIError) }
}
