import XCTest
@testable import EmberCore
