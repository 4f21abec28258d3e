//! The miner models the simulator can impersonate, and the fixed facts about each one.
//!
//! Everything here is what a datasheet or the firmware itself would say: names in the
//! firmware's own spelling, board and chip counts, default power and efficiency, the
//! firmware build a unit reports. Nothing here changes while the simulator runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Who built the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Make {
    /// MicroBT Whatsminer.
    Whatsminer,
    /// Bitmain Antminer (stock firmware or LuxOS).
    Antminer,
}

impl fmt::Display for Make {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Make::Whatsminer => "whatsminer",
            Make::Antminer => "antminer",
        })
    }
}

/// Which firmware (and so which wire protocols) a simulated unit runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// Whatsminer stock firmware from 2024-11 on: RPC on 4028 plus the v3 API on 4433.
    WhatsminerV3,
    /// Antminer stock firmware, 2023-07 generation: cgminer RPC on 4028 plus CGI on 80.
    AntminerStock,
    /// Luxor's LuxOS: everything over the RPC on 4028.
    LuxOs,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::WhatsminerV3 => "whatsminer_v3",
            Firmware::AntminerStock => "antminer_stock",
            Firmware::LuxOs => "luxos",
        })
    }
}

/// A model the simulator can impersonate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Whatsminer M30S (M30S_VE10).
    #[serde(alias = "M30S")]
    M30s,
    /// Whatsminer M50 (M50_VH50).
    #[serde(alias = "M50")]
    M50,
    /// Whatsminer M60 (M60_VK10).
    #[serde(alias = "M60")]
    M60,
    /// Whatsminer M60S (M60S_VK40).
    #[serde(alias = "M60S")]
    M60s,
    /// Antminer S19 on stock firmware.
    #[serde(alias = "S19")]
    S19,
    /// Antminer S19 Pro on stock firmware.
    #[serde(alias = "S19 Pro", alias = "S19Pro")]
    #[value(name = "s19_pro", alias = "s19-pro")]
    S19Pro,
    /// Antminer S21 on stock firmware.
    #[serde(alias = "S21")]
    S21,
    /// Antminer S19k Pro running LuxOS.
    #[serde(alias = "S19k Pro LuxOS")]
    #[value(name = "s19k_pro_luxos", alias = "s19k-pro-luxos")]
    S19kProLuxos,
}

impl Model {
    /// Every supported model, for tests and listings.
    pub const ALL: [Model; 8] = [
        Model::M30s,
        Model::M50,
        Model::M60,
        Model::M60s,
        Model::S19,
        Model::S19Pro,
        Model::S21,
        Model::S19kProLuxos,
    ];

    /// The identifier used in fleet files and on the command line.
    pub fn id(self) -> &'static str {
        match self {
            Model::M30s => "m30s",
            Model::M50 => "m50",
            Model::M60 => "m60",
            Model::M60s => "m60s",
            Model::S19 => "s19",
            Model::S19Pro => "s19_pro",
            Model::S21 => "s21",
            Model::S19kProLuxos => "s19k_pro_luxos",
        }
    }

    /// The fixed facts about this model.
    pub fn spec(self) -> &'static ModelSpec {
        match self {
            Model::M30s => &M30S,
            Model::M50 => &M50,
            Model::M60 => &M60,
            Model::M60s => &M60S,
            Model::S19 => &S19,
            Model::S19Pro => &S19_PRO,
            Model::S21 => &S21,
            Model::S19kProLuxos => &S19K_PRO_LUXOS,
        }
    }

    /// The hardware's maker.
    pub fn make(self) -> Make {
        self.spec().make
    }

    /// The firmware the unit runs.
    pub fn firmware(self) -> Firmware {
        self.spec().firmware
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// What a datasheet and the firmware say about one model.
#[derive(Debug)]
pub struct ModelSpec {
    /// Maker.
    pub make: Make,
    /// Firmware family.
    pub firmware: Firmware,
    /// The model as the firmware spells it in its main identity field
    /// (`get.device.info` `miner.type` on Whatsminer, `Type` on Antminer and LuxOS).
    pub name: &'static str,
    /// Whatsminer only: the spelling in RPC `devdetails` `Model` (`M60S_VK40`, as real units
    /// answer, e.g. `M30S+_VE40`; clients drop the `_` to get the model).
    pub devdetails_name: &'static str,
    /// Default wall power at the normal work mode.
    pub default_power_w: f64,
    /// Default efficiency at the normal work mode.
    pub default_efficiency_j_per_th: f64,
    /// Chips per hashboard (three boards on every supported model).
    pub chips_per_board: u16,
    /// Number of fans reported.
    pub fans: u8,
    /// Chip clock at the normal work mode.
    pub freq_mhz: u32,
    /// Firmware build string (Whatsminer `fw_ver`, Antminer `CompileTime`, LuxOS version).
    pub firmware_build: &'static str,
    /// Control board as the firmware names it.
    pub control_board: &'static str,
    /// Hashboard type as the firmware names it.
    pub board_type: &'static str,
    /// Chip temperature at full load with 25 °C air.
    pub hot_chip_c: f64,
    /// Fan speed at full load.
    pub fan_max_rpm: u32,
}

/// Boards per unit: every supported model has three.
pub const BOARDS: usize = 3;

const M30S: ModelSpec = ModelSpec {
    make: Make::Whatsminer,
    firmware: Firmware::WhatsminerV3,
    name: "M30S_VE10",
    devdetails_name: "M30S_VE10",
    default_power_w: 3400.0,
    default_efficiency_j_per_th: 38.0,
    chips_per_board: 105,
    fans: 2,
    freq_mhz: 580,
    firmware_build: "20241212.15.REL",
    control_board: "H6OS",
    board_type: "E10",
    hot_chip_c: 78.0,
    fan_max_rpm: 6100,
};

const M50: ModelSpec = ModelSpec {
    make: Make::Whatsminer,
    firmware: Firmware::WhatsminerV3,
    name: "M50_VH50",
    devdetails_name: "M50_VH50",
    default_power_w: 3300.0,
    default_efficiency_j_per_th: 26.0,
    chips_per_board: 105,
    fans: 2,
    freq_mhz: 610,
    firmware_build: "20250101.22.REL",
    control_board: "H616",
    board_type: "H50",
    hot_chip_c: 76.0,
    fan_max_rpm: 6000,
};

const M60: ModelSpec = ModelSpec {
    make: Make::Whatsminer,
    firmware: Firmware::WhatsminerV3,
    name: "M60_VK10",
    devdetails_name: "M60_VK10",
    default_power_w: 3420.0,
    default_efficiency_j_per_th: 19.9,
    chips_per_board: 164,
    fans: 2,
    freq_mhz: 625,
    firmware_build: "20250305.11.REL",
    control_board: "H616",
    board_type: "K10",
    hot_chip_c: 75.0,
    fan_max_rpm: 6200,
};

const M60S: ModelSpec = ModelSpec {
    make: Make::Whatsminer,
    firmware: Firmware::WhatsminerV3,
    name: "M60S_VK40",
    devdetails_name: "M60S_VK40",
    default_power_w: 3400.0,
    default_efficiency_j_per_th: 18.5,
    chips_per_board: 225,
    fans: 2,
    freq_mhz: 625,
    firmware_build: "20250101.22.REL",
    control_board: "H616",
    board_type: "K40",
    hot_chip_c: 74.0,
    fan_max_rpm: 6300,
};

const S19: ModelSpec = ModelSpec {
    make: Make::Antminer,
    firmware: Firmware::AntminerStock,
    name: "Antminer S19",
    devdetails_name: "",
    default_power_w: 3250.0,
    default_efficiency_j_per_th: 34.5,
    chips_per_board: 76,
    fans: 4,
    freq_mhz: 650,
    firmware_build: "Thu Jul 13 16:55:15 CST 2023",
    control_board: "AMLCtrl_BHB42601",
    board_type: "BHB42601",
    hot_chip_c: 77.0,
    fan_max_rpm: 6000,
};

const S19_PRO: ModelSpec = ModelSpec {
    make: Make::Antminer,
    firmware: Firmware::AntminerStock,
    name: "Antminer S19 Pro",
    devdetails_name: "",
    default_power_w: 3250.0,
    default_efficiency_j_per_th: 29.5,
    chips_per_board: 114,
    fans: 4,
    freq_mhz: 525,
    firmware_build: "Mon Dec 11 15:26:02 CST 2023",
    control_board: "AMLCtrl_BHB42603",
    board_type: "BHB42603",
    hot_chip_c: 76.0,
    fan_max_rpm: 6000,
};

const S21: ModelSpec = ModelSpec {
    make: Make::Antminer,
    firmware: Firmware::AntminerStock,
    name: "Antminer S21",
    devdetails_name: "",
    default_power_w: 3500.0,
    default_efficiency_j_per_th: 17.5,
    chips_per_board: 108,
    fans: 4,
    freq_mhz: 490,
    firmware_build: "Fri Nov 24 10:12:33 CST 2023",
    control_board: "CVCtrl_BHB68606",
    board_type: "BHB68606",
    hot_chip_c: 72.0,
    fan_max_rpm: 6600,
};

const S19K_PRO_LUXOS: ModelSpec = ModelSpec {
    make: Make::Antminer,
    firmware: Firmware::LuxOs,
    name: "Antminer S19k Pro",
    devdetails_name: "",
    default_power_w: 2800.0,
    default_efficiency_j_per_th: 23.0,
    chips_per_board: 77,
    fans: 4,
    freq_mhz: 300,
    firmware_build: "2025.4.8.220305",
    control_board: "cvitek",
    board_type: "BHB56903",
    hot_chip_c: 70.0,
    fan_max_rpm: 5800,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hashrates_are_plausible() {
        for model in Model::ALL {
            let spec = model.spec();
            let ths = spec.default_power_w / spec.default_efficiency_j_per_th;
            assert!((80.0..=210.0).contains(&ths), "{model}: {ths} TH/s");
        }
    }

    #[test]
    fn model_ids_round_trip_through_serde() {
        for model in Model::ALL {
            let json = serde_json::to_string(&model).unwrap();
            assert_eq!(json, format!("\"{}\"", model.id()));
            let back: Model = serde_json::from_str(&json).unwrap();
            assert_eq!(back, model);
        }
    }
}
