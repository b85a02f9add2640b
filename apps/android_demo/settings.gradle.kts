pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()       // LiteRT (com.google.ai.edge.litert), CameraX, Compose
        mavenCentral() // ExecuTorch (org.pytorch:executorch-android)
    }
}
rootProject.name = "MobileVMoEDemo"
include(":app")
