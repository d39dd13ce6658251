// The library product: one import for everything below it. Each layer is its own target (see
// ARCHITECTURE.md); a user who needs less can depend on a lower target alone.
@_exported import ZeroSegCore
@_exported import ZeroSegFormats
@_exported import ZeroSegImaging
@_exported import ZeroSegText
@_exported import ZeroSegCLIP
@_exported import ZeroSegHub
@_exported import ZeroSegSegmentation
@_exported import ZeroSegTuning
@_exported import ZeroSegIndex
@_exported import ZeroSegANN
