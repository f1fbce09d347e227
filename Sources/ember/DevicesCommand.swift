import EmberCore
import Foundation

/// `ember devices`: the OpenCL platforms and devices found, with their memory, and the one the
/// device flags choose; or why OpenCL is unavailable (then Ember runs on the CPU). Either way
/// it exits 0: no device is not an error.
enum DevicesCommand {
    static let flags: [Arguments.Flag] = DeviceFlags.all
    static let summary = "list OpenCL devices and their memory, and which one Ember would use"

    static func main(_ arguments: Arguments) async throws {
        let choice = try arguments.deviceChoice()
        let system: OpenCLSystem
        switch OpenCLSystem.discover(libraryPath: arguments.openCLLibraryPath() ?? OpenCLLibrary.defaultPath) {
        case let .failure(unavailable):
            try Terminal.print("OpenCL unavailable: \(unavailable.reason)\nEmber runs on the CPU.")
            return
        case let .success(found): system = found
        }
        try Terminal.print("OpenCL library: \(system.library.path)")
        for platform in system.platforms {
            try Terminal.print("platform: \(platform.name) (\(platform.vendor), \(platform.version))")
        }
        // Resolve the choice before listing, but report a bad index after the list it refers to.
        let selected = Result { try system.select(choice) }
        let chosenIndex = (try? selected.get().get())?.index
        for device in system.devices {
            let mark = device.index == chosenIndex ? "*" : " "
            try Terminal.print("\(mark) \(device.index): \(device.name) [\(device.kind.rawValue)] on \(device.platform.name)")
            try Terminal.print("     memory \(ByteSize.format(device.globalMemoryBytes)), largest buffer \(ByteSize.format(device.maxAllocationBytes)), "
                  + "\(device.computeUnits) compute units, \(device.version)")
        }
        switch selected {
        case let .failure(error): throw error
        case let .success(.success(device)): try Terminal.print("chosen: device \(device.index) (\(device.name))")
        case let .success(.failure(unavailable)): try Terminal.print("none chosen: \(unavailable.reason); Ember runs on the CPU.")
        }
    }
}
